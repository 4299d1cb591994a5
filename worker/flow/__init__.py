"""The rotation story, one step per module: intake -> plan -> switch -> validate -> retire.

Pure logic over the ports in ``worker.domain.ports``; imports no adapter, runtime, CLI or local
module (checked by import-linter). ``tasks/``, the CLI and the rotation function call in here.
"""
