-- Serviceplatformen access: every FBS agency and the municipality it calls for (FBS, one query).
SELECT agency_id, municipality_cvr
FROM agency
ORDER BY agency_id
