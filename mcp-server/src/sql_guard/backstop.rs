//! The second pass of step 5: sqlparser's derived visitor re-checks what the walk checks.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, InTarget, LockType, ObjectName, ObjectNamePart, Query, Select, Statement, TableFactor,
    Visit, Visitor,
};

use super::GuardError;
use super::deny::denied_function;
use super::error::excerpt;
use super::walk::field_notation_call;

/// A second, independent pass with sqlparser's derived visitor, which reaches every node by
/// construction: denied calls, nested non-query statements, locking clauses and `SELECT INTO`
/// anywhere. The hand-written walk ([`super::walk`]) should already have refused all of these
/// (the tests check both passes separately); this guards against a gap in it.
pub(super) fn backstop(statement: &Statement) -> Result<(), GuardError> {
    match statement.visit(&mut Backstop { statements: 0 }) {
        ControlFlow::Break(error) => Err(error),
        ControlFlow::Continue(()) => Ok(()),
    }
}

#[derive(Debug)]
struct Backstop {
    statements: usize,
}

impl Backstop {
    /// Refuses a denied called name: the last part, or a part that is itself a call.
    fn name(name: &ObjectName) -> ControlFlow<GuardError> {
        let last = name.0.len().saturating_sub(1);
        for (i, part) in name.0.iter().enumerate() {
            let value = match part {
                ObjectNamePart::Identifier(ident) if i == last => &ident.value,
                ObjectNamePart::Identifier(_) => continue,
                ObjectNamePart::Function(function) => &function.name.value,
            };
            let lower = value.to_lowercase();
            if denied_function(&lower).is_some() {
                return ControlFlow::Break(GuardError::ForbiddenFunction(
                    excerpt(&lower).into_owned(),
                ));
            }
        }
        ControlFlow::Continue(())
    }
}

impl Visitor for Backstop {
    type Break = GuardError;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<GuardError> {
        self.statements += 1;
        match statement {
            Statement::Query(_) => ControlFlow::Continue(()),
            Statement::Explain { .. } | Statement::ShowVariable { .. } if self.statements == 1 => {
                ControlFlow::Continue(())
            }
            Statement::Insert(_) => not_read_only("INSERT"),
            Statement::Update(_) => not_read_only("UPDATE"),
            Statement::Delete(_) => not_read_only("DELETE"),
            Statement::Merge(_) => not_read_only("MERGE"),
            _ => not_read_only("UNKNOWN"),
        }
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<GuardError> {
        match query.locks.first().map(|lock| &lock.lock_type) {
            None => ControlFlow::Continue(()),
            Some(LockType::Update) => forbidden_clause("FOR UPDATE"),
            Some(LockType::Share) => forbidden_clause("FOR SHARE"),
        }
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<GuardError> {
        if select.into.is_some() {
            return forbidden_clause("SELECT INTO");
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<GuardError> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => Backstop::name(name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<GuardError> {
        if let Err(error) = field_notation_call(expr) {
            return ControlFlow::Break(error);
        }
        match expr {
            Expr::Function(function) => Backstop::name(&function.name),
            Expr::In {
                target:
                    InTarget::Table {
                        name,
                        args: Some(_),
                    },
                ..
            } => Backstop::name(name),
            _ => ControlFlow::Continue(()),
        }
    }
}

fn not_read_only(statement: &str) -> ControlFlow<GuardError> {
    ControlFlow::Break(GuardError::NotReadOnly {
        statement: statement.to_owned(),
    })
}

fn forbidden_clause(clause: &str) -> ControlFlow<GuardError> {
    ControlFlow::Break(GuardError::ForbiddenClause(clause.to_owned()))
}
