"""alitx's wheel: the `alitx` binary and the aliBuild helper `alibuild-alitx`
(module `alitx.alibuild_alitx`, the repository's scripts/alibuild-alitx)."""
