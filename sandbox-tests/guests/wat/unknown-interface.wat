;; Attack: ask the host for an interface it has never heard of, hoping a
;; permissive linker hands over something anyway.
(component
  (import "acme:vault/secrets@1.0.0" (instance
    (export "get" (func (param "name" string) (result string))))))
