-- Every object the extension makes explains itself: each member \dx+ bst
-- lists (function, aggregate, table, view, sequence) and each column of its
-- tables and views has a comment (\df+, \da, \dt+, \dv+, \ds+ and \d+ show
-- them), and every bst.* setting a description in pg_settings.  A new object
-- without a COMMENT ON (at the end of bst--1.1.sql and bst--1.0--1.1.sql)
-- is listed here.
SET client_min_messages = warning;
CREATE TEMP VIEW bst_members AS
SELECT d.classid, d.objid, (pg_identify_object(d.classid, d.objid, 0)).type AS kind,
       pg_describe_object(d.classid, d.objid, 0) AS member,
       obj_description(d.objid, d.classid::regclass::name) AS description
FROM pg_depend d
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bst');

-- Members by kind (a new kind of member shows here too).
SELECT kind, count(*) AS members, count(nullif(description, '')) AS commented
FROM bst_members GROUP BY 1 ORDER BY 1;
-- Members without a comment: none.
SELECT member FROM bst_members WHERE coalesce(description, '') = '' ORDER BY 1;

-- Columns of the extension's tables and views without a comment: none.
SELECT c.relname || '.' || a.attname AS uncommented_column
FROM bst_members m
JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid AND c.relkind IN ('r', 'v')
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE coalesce(col_description(c.oid, a.attnum), '') = ''
ORDER BY 1;

-- The settings: each has a short description (they cannot take COMMENT ON;
-- src/bst.c gives it).
LOAD 'bst';
SELECT name, coalesce(short_desc, '') <> '' AS described
FROM pg_settings WHERE name LIKE 'bst.%' ORDER BY 1;
