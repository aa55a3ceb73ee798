"""Point clouds: object scans and LiDAR tiles as Point-MAE groups (see ``adapter.py``)."""
