"""Runs a WASI command module with wasmtime-py the way YoWASP's runtime
(yowasp_runtime.run_wasm) does: a default wasmtime.Engine, the compiled
module cached with Module.serialize and loaded with Module.deserialize_file,
a fresh /tmp, standard I/O inherited. tools-vs-native uses it for tools
YoWASP does not package (CPython).

    python wasmtime-py-run.py --cache DIR [--dir GUEST=HOST]... MODULE ARGV0 [ARGS...]
"""

import hashlib
import os
import pathlib
import shutil
import sys
import tempfile

import wasmtime


def main(argv):
    cache, dirs = None, []
    while argv and argv[0].startswith("--"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--cache":
            cache = pathlib.Path(value)
        elif flag == "--dir":
            guest, host = value.split("=", 1)
            dirs.append((guest, host))
        else:
            sys.exit(f"unknown flag {flag}")
    module_path, args = argv[0], argv[1:]
    binary = pathlib.Path(module_path).read_bytes()

    wasi = wasmtime.WasiConfig()
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.argv = args
    wasi.env = [(k, v) for k, v in os.environ.items() if k.startswith("PYTHON")]
    for guest, host in dirs:
        wasi.preopen_dir(host, guest)
    tmp = tempfile.mkdtemp(prefix="wasmtime-py-")
    wasi.preopen_dir(tmp, "/tmp")
    try:
        engine = wasmtime.Engine()
        cached = cache / hashlib.sha1(binary).hexdigest()
        module = None
        if cached.exists():
            try:
                module = wasmtime.Module.deserialize_file(engine, str(cached))
            except wasmtime.WasmtimeError:
                pass
        if module is None:
            module = wasmtime.Module(engine, binary)
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(module.serialize())
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        store = wasmtime.Store(engine)
        store.set_wasi(wasi)
        instance = linker.instantiate(store, module)
        try:
            instance.exports(store)["_start"](store)
        except wasmtime.ExitTrap as trap:
            return trap.code
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
