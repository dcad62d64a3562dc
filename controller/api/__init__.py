"""The northbound REST API: Neutron v2.0 shapes over the `controller.store.Store`."""

from controller.api.app import create_app
from controller.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
