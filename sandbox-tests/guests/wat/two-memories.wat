;; Attack: declare more linear memories than a step is allowed, each of
;; which the host would have to reserve.
(module
  (memory $a 1)
  (memory $b 1)
  (memory $c 1)
  (func (export "_start")))
