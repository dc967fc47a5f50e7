"""The default configs (YAML diffs over `tfflannel.config`), read with `importlib.resources`.

`tfflannel.config.packaged_config("patched.yaml")` gives the path; the top-level `configs/` of a checkout holds
links to these files for users to read and copy.
"""
