"""Medical volumes (CT, MRI): NIfTI and DICOM series through MONAI; see adapter.MedicalAdapter."""
from modalities.medical.adapter import MedicalAdapter

__all__ = ["MedicalAdapter"]
