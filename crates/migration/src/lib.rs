//! Live migration engine (see its issue); empty until then.
