"""The qcow2 format (version 3 read and write, version 2 read): header, tables, refcounts, disk."""
