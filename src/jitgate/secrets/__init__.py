"""Secret values and their encryption at rest."""

from jitgate.secrets.box import SecretBox, load_master_key
from jitgate.secrets.secret import Secret

__all__ = ["Secret", "SecretBox", "load_master_key"]
