;; Attack: make an HTTP request. The component imports the outgoing HTTP
;; handler, which airlock never links.
(component
  (import "wasi:http/outgoing-handler@0.2.0" (instance))
  (import "wasi:http/types@0.2.0" (instance)))
