"""leadflow: the core every service shares (config, fields, rules, money, templates, kit)."""

import pkgutil

# The generated gRPC code lives in gen/leadflow/<service>/v1 (the proto packages are
# leadflow.<service>.v1); extend this package's path so both trees import as `leadflow`.
__path__ = pkgutil.extend_path(__path__, __name__)
