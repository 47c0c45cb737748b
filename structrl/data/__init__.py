"""structrl.data."""
