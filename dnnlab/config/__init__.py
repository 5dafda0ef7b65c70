"""Config rules: allowed values and validation (`schema`), and the catalog of options (`catalog`, `dnnlab list`)."""
