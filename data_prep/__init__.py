"""Dataset converters into the pc3d prepared object cache (``python -m data_prep.<name>``)."""
