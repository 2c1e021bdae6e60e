"""sam-train."""
