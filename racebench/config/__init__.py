"""Configuration: scenario files read defensively, validated and expanded into runs."""
