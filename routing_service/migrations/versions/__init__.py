"""The routing revisions, oldest first; 0001 is the schema create_all made before them."""
