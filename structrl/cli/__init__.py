"""structrl.cli."""
