SELECT r.package_name AS "package", count(*) AS "COUNT(receipts)" FROM "receipt_facts" "r" WHERE "r".tenant = %(p0)s AND "r"."recorded_at" >= %(p1)s GROUP BY 1 ORDER BY 1 LIMIT %(p2)s
