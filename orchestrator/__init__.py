"""capture-all controller: inventory, plan, fan-out over SSH, evidence bundle, CLI."""

__version__ = "0.1.0"
