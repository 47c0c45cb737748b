"""Registration of structrl's Gymnasium environments."""


def register_envs() -> None:
    """Register every structrl environment id with Gymnasium (idempotent)."""
