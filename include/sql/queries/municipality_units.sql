-- The units of isolation: every FBS agency with its municipality and debtor system (FBS, one query).
SELECT agency_id, name, municipality_cvr, debtor_vendor
FROM agency
ORDER BY municipality_cvr, debtor_vendor, agency_id
