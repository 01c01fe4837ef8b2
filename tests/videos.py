"""Generated test videos (filled by the video tests)."""
