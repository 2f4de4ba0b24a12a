"""Result documents and everything rendered from them (tables, reports, compare)."""
