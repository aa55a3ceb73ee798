"""Generic N-d array adapter: C channels on a 1-, 2- or 3-d grid stored as .npy files."""
