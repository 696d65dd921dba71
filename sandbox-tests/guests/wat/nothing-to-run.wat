;; A module that exports no entry point: nothing for the engine to call
;; (a function taking a parameter cannot be one, even named by `entry:`).
(module
  (memory (export "memory") 1)
  (func (export "not_start") (param i32)))
