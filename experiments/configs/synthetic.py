"""The synthetic task's configs (they ship with the package: see there)."""

from gdattn.configs.synthetic import get_config  # pylint: disable=unused-import
from gdattn.configs.synthetic import paper_optim  # pylint: disable=unused-import
