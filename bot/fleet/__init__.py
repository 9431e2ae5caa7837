"""What several bot processes on one database coordinate: work done once for the whole fleet."""
