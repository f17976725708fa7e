"""Readers and writers for the field's file formats and megabench's HDF5 feature store."""
