\set d -1
\set z 0
UPDATE racebench_0e2176c7_counter SET value = value + :d WHERE id = 1 AND value + :d >= :z;
