//! (being moved here from `routes/`; see issue 14)
