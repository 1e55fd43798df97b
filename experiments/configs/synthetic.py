"""The synthetic task's configs (they ship with the package: see there)."""

from gdattn.configs.synthetic import get_config as get_config
from gdattn.configs.synthetic import paper_optim as paper_optim
