"""Authentication: Supabase JWT verification and the CurrentUser dependency."""
