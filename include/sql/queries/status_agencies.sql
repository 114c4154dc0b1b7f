-- Status page: the agencies of FBS and the municipality each belongs to (FBS, one query).
SELECT agency_id, name, municipality_cvr, debtor_vendor
FROM agency
ORDER BY municipality_cvr, agency_id
