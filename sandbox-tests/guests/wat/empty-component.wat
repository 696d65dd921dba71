;; A component that exports nothing: no step, no command.
(component)
