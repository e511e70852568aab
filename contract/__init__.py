"""What more than one part of Linewatch must agree on, written once.

The trainer, the exporter, the torch-free edge, the refresh job and the tests all import this
package; it imports none of them, and nothing heavier than numpy, OpenCV and pydantic. Keeping a
contract here (rather than a copy per part) is what stops train/serve skew by construction:

- ``geometry``: how a camera frame becomes model inputs, and their maps one frame map;
- ``graph_io``: the scoring graph's tensor names, order, shapes and types;
- ``manifest`` and ``bundle_tar``: the bundle's manifest schema, its one writer and its checks;
- ``store``: the bundle store's layout (versions, ``current``, engine caches);
- ``errors``: the error types every part raises and catches;
- ``config_loader``: TOML file, environment and CLI overrides, one error format.
"""
