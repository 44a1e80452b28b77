"""Read models of the portal pages, one module per page: queries only.

Every write goes through the domain services. Privacy rules live in these modules, not in
templates: a rater's view holds only their own answers (evaluations), and a ratee's view holds
rater groups only as aggregates over the policy's anonymity threshold (transparency).
"""
