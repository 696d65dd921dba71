;; A module that exports no entry point: nothing for the engine to call.
(module
  (memory (export "memory") 1)
  (func (export "not_start")))
