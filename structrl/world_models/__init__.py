"""structrl.world_models."""
