-- Data categories a purpose never uses, whatever the subject agreed to: a
-- check that names one of them is denied (DATA_CATEGORY_EXCLUDED). Keys of
-- data_categories; the service checks they exist when a purpose is written
-- (an array cannot carry a foreign key).
ALTER TABLE purposes ADD COLUMN excluded_categories text[] NOT NULL DEFAULT '{}';

-- The published policy: "We do not sell contact form submissions or use them
-- for unrelated advertising." Selling is PROHIBITED already; advertising to
-- people from what they wrote in the contact form is excluded here.
UPDATE purposes SET excluded_categories = '{contact_form_inquiries}'
WHERE key IN ('targeted_advertising', 'marketing_email');
