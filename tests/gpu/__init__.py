"""Tests of the CUDA path; they run only where CUDA is (elsewhere: reported skipped)."""
