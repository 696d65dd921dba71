;; Attack: import a granted interface with a different signature than the
;; host's, hoping to confuse the host about what the guest passes it.
(component
  (import "wasi:cli/environment@0.2.0" (instance
    (export "get-environment" (func (param "secret" u64) (result u64))))))
