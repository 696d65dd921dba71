;; Attack: grow a table without end. Each element is host memory (a
;; function reference), so an unbounded table is an unbounded host
;; allocation. Traps once a `table.grow` is refused.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "_start")
    (loop $more
      (br_if $more (i32.ne (table.grow $t (ref.null func) (i32.const 100000)) (i32.const -1))))
    unreachable))
