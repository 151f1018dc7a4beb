"""The Lightning glue: the only storey that imports lightning."""
