"""The chatplatform project package (the requested `platform/`: see the README for the name)."""
