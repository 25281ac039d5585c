//! Step 5: walks the whole syntax tree of an accepted query with its own stack, refusing
//! data-modifying CTEs, `SELECT … INTO`, locking clauses and calls of denied functions.

use sqlparser::ast::{
    AccessExpr, CeilFloorKind, ConnectByKind, Cte, Distinct, ExprWithAlias, Fetch, Function,
    FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments, GroupByExpr,
    GroupByWithModifier, InTarget, Join, JoinConstraint, JoinOperator, JsonPath, JsonPathElem,
    LimitClause, ListAggOnOverflow, LockClause, LockType, NamedWindowDefinition, NamedWindowExpr,
    ObjectName, ObjectNamePart, Offset, OrderBy, OrderByExpr, OrderByKind, PipeOperator,
    PivotValueSource, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    Subscript, TableFactor, TableFunctionArgs, TableSampleKind, TableVersion, TableWithJoins,
    TopQuantity, WildcardAdditionalOptions, WindowFrameBound, WindowSpec, WindowType, WithFill,
};
use sqlparser::ast::{Expr, HavingBound, MemberOf, XmlTableColumnOption};

use super::GuardError;
use super::classify::dml_keyword;
use super::deny::denied_function;
use super::error::excerpt;

/// A node still to visit. The walk keeps its own stack instead of recursing: chains such as
/// `a OR b OR …` make trees thousands of levels deep.
#[derive(Debug)]
enum Node<'a> {
    Query { query: &'a Query, cte_body: bool },
    SetExpr { set: &'a SetExpr, cte_body: bool },
    Expr(&'a Expr),
    Factor(&'a TableFactor),
}

/// Walks a query's whole tree; fails on the first refused construct.
#[derive(Debug, Default)]
pub(super) struct Walker<'a> {
    stack: Vec<Node<'a>>,
}

impl<'a> Walker<'a> {
    pub(super) fn query(mut self, query: &'a Query) -> Result<(), GuardError> {
        self.stack.push(Node::Query {
            query,
            cte_body: false,
        });
        while let Some(node) = self.stack.pop() {
            match node {
                Node::Query { query, cte_body } => self.visit_query(query, cte_body)?,
                Node::SetExpr { set, cte_body } => self.visit_set_expr(set, cte_body)?,
                Node::Expr(expr) => self.visit_expr(expr)?,
                Node::Factor(factor) => self.visit_table_factor(factor)?,
            }
        }
        Ok(())
    }

    fn expr(&mut self, expr: &'a Expr) {
        self.stack.push(Node::Expr(expr));
    }

    pub(super) fn exprs<I: IntoIterator<Item = &'a Expr>>(&mut self, exprs: I) {
        for expr in exprs {
            self.expr(expr);
        }
    }

    fn subquery(&mut self, query: &'a Query) {
        self.stack.push(Node::Query {
            query,
            cte_body: false,
        });
    }

    fn visit_query(&mut self, query: &'a Query, cte_body: bool) -> Result<(), GuardError> {
        let Query {
            with,
            body,
            order_by,
            limit_clause,
            fetch,
            locks,
            for_clause: _, // FOR XML/JSON (MS SQL): no expressions, and PostgreSQL rejects it
            settings,
            format_clause: _, // ClickHouse FORMAT name: no expressions
            pipe_operators,
        } = query;
        if let Some(LockClause { lock_type, .. }) = locks.first() {
            return Err(GuardError::ForbiddenClause(
                match lock_type {
                    LockType::Update => "FOR UPDATE",
                    LockType::Share => "FOR SHARE",
                }
                .to_owned(),
            ));
        }
        for Cte {
            alias: _,
            query,
            from: _,
            materialized: _,
            closing_paren_token: _,
        } in with.iter().flat_map(|with| &with.cte_tables)
        {
            self.stack.push(Node::Query {
                query,
                cte_body: true,
            });
        }
        self.stack.push(Node::SetExpr {
            set: body,
            cte_body,
        });
        if let Some(OrderBy { kind, interpolate }) = order_by {
            match kind {
                OrderByKind::All(_) => {}
                OrderByKind::Expressions(list) => self.order_by(list),
            }
            for item in interpolate.iter().flat_map(|i| i.exprs.iter().flatten()) {
                self.exprs(item.expr.as_ref());
            }
        }
        match limit_clause {
            None => {}
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                self.exprs(limit.as_ref());
                if let Some(Offset { value, rows: _ }) = offset {
                    self.expr(value);
                }
                self.exprs(limit_by);
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.expr(offset);
                self.expr(limit);
            }
        }
        if let Some(Fetch {
            with_ties: _,
            percent: _,
            quantity,
        }) = fetch
        {
            self.exprs(quantity.as_ref());
        }
        for setting in settings.iter().flatten() {
            self.expr(&setting.value);
        }
        for operator in pipe_operators {
            self.pipe_operator(operator)?;
        }
        Ok(())
    }

    fn visit_set_expr(&mut self, set: &'a SetExpr, cte_body: bool) -> Result<(), GuardError> {
        match set {
            SetExpr::Select(select) => self.select(select),
            SetExpr::Query(query) => {
                self.stack.push(Node::Query { query, cte_body });
                Ok(())
            }
            SetExpr::SetOperation {
                left,
                op: _,
                set_quantifier: _,
                right,
            } => {
                self.stack.push(Node::SetExpr {
                    set: left,
                    cte_body,
                });
                self.stack.push(Node::SetExpr {
                    set: right,
                    cte_body,
                });
                Ok(())
            }
            SetExpr::Values(values) => {
                for row in &values.rows {
                    self.exprs(row.iter());
                }
                Ok(())
            }
            SetExpr::Table(_) => Ok(()),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                if cte_body {
                    Err(GuardError::DataModifyingCte)
                } else {
                    Err(GuardError::NotReadOnly {
                        statement: dml_keyword(set).to_owned(),
                    })
                }
            }
        }
    }

    fn select(&mut self, select: &'a Select) -> Result<(), GuardError> {
        let Select {
            select_token: _,
            optimizer_hints: _, // comments
            distinct,
            select_modifiers: _, // MySQL flags
            top,
            top_before_distinct: _,
            projection,
            exclude: _, // column names
            into,
            from,
            lateral_views,
            prewhere,
            selection,
            connect_by,
            group_by,
            cluster_by,
            distribute_by,
            sort_by,
            having,
            named_window,
            qualify,
            window_before_qualify: _,
            value_table_mode: _,
            flavor: _,
        } = select;
        if into.is_some() {
            return Err(GuardError::ForbiddenClause("SELECT INTO".to_owned()));
        }
        match distinct {
            Some(Distinct::On(exprs)) => self.exprs(exprs),
            Some(Distinct::All | Distinct::Distinct) | None => {}
        }
        if let Some(TopQuantity::Expr(expr)) = top.as_ref().and_then(|top| top.quantity.as_ref()) {
            self.expr(expr);
        }
        for item in projection {
            self.select_item(item);
        }
        for table in from {
            self.table_with_joins(table);
        }
        for view in lateral_views {
            self.expr(&view.lateral_view);
        }
        self.exprs(
            prewhere
                .iter()
                .chain(selection)
                .chain(having)
                .chain(qualify),
        );
        for kind in connect_by {
            match kind {
                ConnectByKind::ConnectBy { relationships, .. } => self.exprs(relationships),
                ConnectByKind::StartWith { condition, .. } => self.expr(condition),
            }
        }
        let modifiers = match group_by {
            GroupByExpr::All(modifiers) => modifiers,
            GroupByExpr::Expressions(exprs, modifiers) => {
                self.exprs(exprs);
                modifiers
            }
        };
        for modifier in modifiers {
            match modifier {
                GroupByWithModifier::GroupingSets(expr) => self.expr(expr),
                GroupByWithModifier::Rollup
                | GroupByWithModifier::Cube
                | GroupByWithModifier::Totals => {}
            }
        }
        self.exprs(cluster_by.iter().chain(distribute_by));
        self.order_by(sort_by);
        for NamedWindowDefinition(_, window) in named_window {
            match window {
                NamedWindowExpr::NamedWindow(_) => {}
                NamedWindowExpr::WindowSpec(spec) => self.window_spec(spec),
            }
        }
        Ok(())
    }

    fn select_item(&mut self, item: &'a SelectItem) {
        match item {
            SelectItem::UnnamedExpr(expr)
            | SelectItem::ExprWithAlias { expr, alias: _ }
            | SelectItem::ExprWithAliases { expr, aliases: _ } => self.expr(expr),
            SelectItem::QualifiedWildcard(kind, options) => {
                match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(_) => {}
                    SelectItemQualifiedWildcardKind::Expr(expr) => self.expr(expr),
                }
                self.wildcard_options(options);
            }
            SelectItem::Wildcard(options) => self.wildcard_options(options),
        }
    }

    fn wildcard_options(&mut self, options: &'a WildcardAdditionalOptions) {
        for element in options.opt_replace.iter().flat_map(|r| &r.items) {
            self.expr(&element.expr);
        }
    }

    fn table_with_joins(&mut self, table: &'a TableWithJoins) {
        self.stack.push(Node::Factor(&table.relation));
        for join in &table.joins {
            self.join(join);
        }
    }

    fn join(&mut self, join: &'a Join) {
        self.stack.push(Node::Factor(&join.relation));
        let constraint = match &join.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c)
            | JoinOperator::CrossJoin(c)
            | JoinOperator::Semi(c)
            | JoinOperator::LeftSemi(c)
            | JoinOperator::RightSemi(c)
            | JoinOperator::Anti(c)
            | JoinOperator::LeftAnti(c)
            | JoinOperator::RightAnti(c)
            | JoinOperator::StraightJoin(c) => Some(c),
            JoinOperator::AsOf {
                match_condition,
                constraint,
            } => {
                self.expr(match_condition);
                Some(constraint)
            }
            JoinOperator::CrossApply
            | JoinOperator::OuterApply
            | JoinOperator::ArrayJoin
            | JoinOperator::LeftArrayJoin
            | JoinOperator::InnerArrayJoin => None,
        };
        match constraint {
            Some(JoinConstraint::On(expr)) => self.expr(expr),
            Some(
                JoinConstraint::Using(_)
                | JoinConstraint::UsingAlias(..)
                | JoinConstraint::Natural
                | JoinConstraint::None,
            )
            | None => {}
        }
    }

    fn visit_table_factor(&mut self, factor: &'a TableFactor) -> Result<(), GuardError> {
        match factor {
            TableFactor::Table {
                name,
                alias: _,
                args,
                with_hints,
                version,
                with_ordinality: _,
                partitions: _,
                json_path,
                sample,
                index_directives: _,
                inheritance: _,
            } => {
                // `FROM f(args)` is a table function call; `FROM t` a relation (scope is
                // enforced by the role and the server's configuration, not here).
                if let Some(TableFunctionArgs { args, settings }) = args {
                    self.function_name(name)?;
                    self.function_args(args);
                    for setting in settings.iter().flatten() {
                        self.expr(&setting.value);
                    }
                } else {
                    self.object_name_functions(name)?;
                }
                self.exprs(with_hints);
                match version {
                    None => {}
                    Some(
                        TableVersion::ForSystemTimeAsOf(expr)
                        | TableVersion::TimestampAsOf(expr)
                        | TableVersion::VersionAsOf(expr)
                        | TableVersion::Function(expr),
                    ) => self.expr(expr),
                    Some(TableVersion::Changes { changes, at, end }) => {
                        self.expr(changes);
                        self.expr(at);
                        self.exprs(end.as_ref());
                    }
                }
                if let Some(path) = json_path {
                    self.json_path(path);
                }
                self.table_sample(sample.as_ref());
            }
            TableFactor::Derived {
                lateral: _,
                subquery,
                alias: _,
                sample,
            } => {
                self.subquery(subquery);
                self.table_sample(sample.as_ref());
            }
            TableFactor::TableFunction { expr, alias: _ } => self.expr(expr),
            TableFactor::Function {
                lateral: _,
                name,
                args,
                with_ordinality: _,
                alias: _,
            } => {
                self.function_name(name)?;
                self.function_args(args);
            }
            TableFactor::UNNEST {
                alias: _,
                array_exprs,
                with_offset: _,
                with_offset_alias: _,
                with_ordinality: _,
            } => self.exprs(array_exprs),
            TableFactor::JsonTable {
                json_expr,
                json_path: _,
                columns: _,
                alias: _,
            }
            | TableFactor::OpenJsonTable {
                json_expr,
                json_path: _,
                columns: _,
                alias: _,
            } => self.expr(json_expr),
            TableFactor::NestedJoin {
                table_with_joins,
                alias: _,
            } => self.table_with_joins(table_with_joins),
            TableFactor::Pivot {
                table,
                aggregate_functions,
                value_column,
                value_source,
                default_on_null,
                alias: _,
            } => {
                self.stack.push(Node::Factor(table));
                self.aliased_exprs(aggregate_functions);
                self.exprs(value_column.iter().chain(default_on_null));
                self.pivot_value_source(value_source);
            }
            TableFactor::Unpivot {
                table,
                value,
                name: _,
                columns,
                null_inclusion: _,
                alias: _,
            } => {
                self.stack.push(Node::Factor(table));
                self.expr(value);
                self.aliased_exprs(columns);
            }
            TableFactor::UnpivotExpr {
                expression,
                value_alias: _,
                attribute_alias: _,
            } => self.expr(expression),
            TableFactor::MatchRecognize {
                table,
                partition_by,
                order_by,
                measures,
                rows_per_match: _,
                after_match_skip: _,
                pattern: _,
                symbols,
                alias: _,
            } => {
                self.stack.push(Node::Factor(table));
                self.exprs(partition_by);
                self.order_by(order_by);
                self.exprs(measures.iter().map(|m| &m.expr));
                self.exprs(symbols.iter().map(|s| &s.definition));
            }
            TableFactor::XmlTable {
                namespaces,
                row_expression,
                passing,
                columns,
                alias: _,
            } => {
                self.exprs(namespaces.iter().map(|n| &n.uri));
                self.expr(row_expression);
                self.exprs(passing.arguments.iter().map(|a| &a.expr));
                for column in columns {
                    match &column.option {
                        XmlTableColumnOption::NamedInfo {
                            r#type: _,
                            path,
                            default,
                            nullable: _,
                        } => self.exprs(path.iter().chain(default)),
                        XmlTableColumnOption::ForOrdinality => {}
                    }
                }
            }
            TableFactor::SemanticView {
                name: _,
                dimensions,
                metrics,
                facts,
                where_clause,
                alias: _,
            } => self.exprs(
                dimensions
                    .iter()
                    .chain(metrics)
                    .chain(facts)
                    .chain(where_clause),
            ),
        }
        Ok(())
    }

    fn table_sample(&mut self, sample: Option<&'a TableSampleKind>) {
        let Some(
            TableSampleKind::BeforeTableAlias(sample) | TableSampleKind::AfterTableAlias(sample),
        ) = sample
        else {
            return;
        };
        if let Some(quantity) = &sample.quantity {
            self.expr(&quantity.value);
        }
        if let Some(bucket) = &sample.bucket {
            self.exprs(bucket.on.as_ref());
        }
        self.exprs(sample.offset.as_ref());
    }

    fn pivot_value_source(&mut self, source: &'a PivotValueSource) {
        match source {
            PivotValueSource::List(list) => self.aliased_exprs(list),
            PivotValueSource::Any(order_by) => self.order_by(order_by),
            PivotValueSource::Subquery(query) => self.subquery(query),
        }
    }

    fn aliased_exprs(&mut self, list: &'a [ExprWithAlias]) {
        self.exprs(list.iter().map(|e| &e.expr));
    }

    fn order_by(&mut self, list: &'a [OrderByExpr]) {
        for OrderByExpr {
            expr,
            options: _,
            with_fill,
        } in list
        {
            self.expr(expr);
            if let Some(WithFill { from, to, step }) = with_fill {
                self.exprs(from.iter().chain(to).chain(step));
            }
        }
    }

    fn window_spec(&mut self, spec: &'a WindowSpec) {
        let WindowSpec {
            window_name: _,
            partition_by,
            order_by,
            window_frame,
        } = spec;
        self.exprs(partition_by);
        self.order_by(order_by);
        if let Some(frame) = window_frame {
            for bound in std::iter::once(&frame.start_bound).chain(&frame.end_bound) {
                match bound {
                    WindowFrameBound::CurrentRow => {}
                    WindowFrameBound::Preceding(expr) | WindowFrameBound::Following(expr) => {
                        self.exprs(expr.as_deref());
                    }
                }
            }
        }
    }

    fn json_path(&mut self, path: &'a JsonPath) {
        for element in &path.path {
            match element {
                JsonPathElem::Dot { .. } => {}
                JsonPathElem::Bracket { key } | JsonPathElem::ColonBracket { key } => {
                    self.expr(key);
                }
            }
        }
    }

    fn pipe_operator(&mut self, operator: &'a PipeOperator) -> Result<(), GuardError> {
        match operator {
            PipeOperator::Limit { expr, offset } => {
                self.expr(expr);
                self.exprs(offset.as_ref());
            }
            PipeOperator::Where { expr } => self.expr(expr),
            PipeOperator::OrderBy { exprs } => self.order_by(exprs),
            PipeOperator::Select { exprs } | PipeOperator::Extend { exprs } => {
                for item in exprs {
                    self.select_item(item);
                }
            }
            PipeOperator::Set { assignments } => self.exprs(assignments.iter().map(|a| &a.value)),
            PipeOperator::Drop { .. }
            | PipeOperator::As { .. }
            | PipeOperator::Rename { .. }
            | PipeOperator::Unpivot { .. } => {}
            PipeOperator::Aggregate {
                full_table_exprs,
                group_by_expr,
            } => {
                for item in full_table_exprs.iter().chain(group_by_expr) {
                    self.expr(&item.expr.expr);
                }
            }
            PipeOperator::TableSample { sample } => {
                if let Some(quantity) = &sample.quantity {
                    self.expr(&quantity.value);
                }
                self.exprs(sample.offset.as_ref());
            }
            PipeOperator::Union { queries, .. }
            | PipeOperator::Intersect { queries, .. }
            | PipeOperator::Except { queries, .. } => {
                for query in queries {
                    self.subquery(query);
                }
            }
            PipeOperator::Call { function, alias: _ } => self.function(function)?,
            PipeOperator::Pivot {
                aggregate_functions,
                value_column: _,
                value_source,
                alias: _,
            } => {
                self.aliased_exprs(aggregate_functions);
                self.pivot_value_source(value_source);
            }
            PipeOperator::Join(join) => self.join(join),
        }
        Ok(())
    }

    /// Refuses a denied function name; walks arguments hidden in the name's parts.
    fn function_name(&mut self, name: &'a ObjectName) -> Result<(), GuardError> {
        self.object_name_functions(name)?;
        let last = match name.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => &ident.value,
            Some(ObjectNamePart::Function(function)) => &function.name.value,
            None => return Ok(()),
        };
        let lower = last.to_lowercase();
        if denied_function(&lower).is_some() {
            return Err(GuardError::ForbiddenFunction(excerpt(&lower).into_owned()));
        }
        Ok(())
    }

    /// Name parts that are themselves calls (`IDENTIFIER(…)`-style, not PostgreSQL).
    fn object_name_functions(&mut self, name: &'a ObjectName) -> Result<(), GuardError> {
        for part in &name.0 {
            match part {
                ObjectNamePart::Identifier(_) => {}
                ObjectNamePart::Function(function) => {
                    let lower = function.name.value.to_lowercase();
                    if denied_function(&lower).is_some() {
                        return Err(GuardError::ForbiddenFunction(excerpt(&lower).into_owned()));
                    }
                    self.function_args(&function.args);
                }
            }
        }
        Ok(())
    }

    fn function(&mut self, function: &'a Function) -> Result<(), GuardError> {
        let Function {
            name,
            uses_odbc_syntax: _,
            parameters,
            args,
            within_group,
            filter,
            null_treatment: _,
            over,
        } = function;
        self.function_name(name)?;
        self.function_arguments(parameters);
        self.function_arguments(args);
        self.order_by(within_group);
        self.exprs(filter.as_deref());
        match over {
            None | Some(WindowType::NamedWindow(_)) => {}
            Some(WindowType::WindowSpec(spec)) => self.window_spec(spec),
        }
        Ok(())
    }

    fn function_arguments(&mut self, arguments: &'a FunctionArguments) {
        match arguments {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(query) => self.subquery(query),
            FunctionArguments::List(list) => {
                self.function_args(&list.args);
                for clause in &list.clauses {
                    match clause {
                        FunctionArgumentClause::Where(expr)
                        | FunctionArgumentClause::Limit(expr)
                        | FunctionArgumentClause::Having(HavingBound(_, expr)) => {
                            self.expr(expr);
                        }
                        FunctionArgumentClause::OrderBy(list) => self.order_by(list),
                        FunctionArgumentClause::OnOverflow(ListAggOnOverflow::Truncate {
                            filler,
                            with_count: _,
                        }) => self.exprs(filler.as_deref()),
                        FunctionArgumentClause::OnOverflow(ListAggOnOverflow::Error)
                        | FunctionArgumentClause::IgnoreOrRespectNulls(_)
                        | FunctionArgumentClause::Separator(_)
                        | FunctionArgumentClause::JsonNullClause(_)
                        | FunctionArgumentClause::JsonReturningClause(_) => {}
                    }
                }
            }
        }
    }

    fn function_args(&mut self, args: &'a [FunctionArg]) {
        for arg in args {
            let arg = match arg {
                FunctionArg::Named {
                    name: _,
                    arg,
                    operator: _,
                } => arg,
                FunctionArg::ExprNamed {
                    name,
                    arg,
                    operator: _,
                } => {
                    self.expr(name);
                    arg
                }
                FunctionArg::Unnamed(arg) => arg,
            };
            match arg {
                FunctionArgExpr::Expr(expr) => self.expr(expr),
                FunctionArgExpr::WildcardWithOptions(options) => self.wildcard_options(options),
                FunctionArgExpr::QualifiedWildcard(_) | FunctionArgExpr::Wildcard => {}
            }
        }
    }

    fn visit_expr(&mut self, expr: &'a Expr) -> Result<(), GuardError> {
        match expr {
            Expr::Function(function) => self.function(function)?,
            Expr::Subquery(query)
            | Expr::Exists {
                subquery: query,
                negated: _,
            } => self.subquery(query),
            Expr::In {
                expr,
                target,
                negated: _,
                global: _,
            } => {
                self.expr(expr);
                match target {
                    InTarget::List(list) => self.exprs(list),
                    InTarget::Subquery(query) => self.subquery(query),
                    InTarget::Unnest(array) => self.expr(array),
                    InTarget::Table { name, args } => match args {
                        Some(args) => {
                            self.function_name(name)?;
                            self.function_args(args);
                        }
                        None => self.object_name_functions(name)?,
                    },
                }
            }
            Expr::CompoundIdentifier(_) => field_notation_call(expr)?,
            Expr::Identifier(_)
            | Expr::Value(_)
            | Expr::TypedString(_)
            | Expr::Wildcard(_)
            | Expr::QualifiedWildcard(..)
            | Expr::MatchAgainst { .. } => {}
            Expr::CompoundFieldAccess { root, access_chain } => {
                field_notation_call(expr)?;
                self.expr(root);
                for access in access_chain {
                    match access {
                        AccessExpr::Dot(expr) => self.expr(expr),
                        AccessExpr::Subscript(Subscript::Index { index }) => self.expr(index),
                        AccessExpr::Subscript(Subscript::Slice {
                            lower_bound,
                            upper_bound,
                            stride,
                        }) => self.exprs(lower_bound.iter().chain(upper_bound).chain(stride)),
                    }
                }
            }
            Expr::JsonAccess { value, path } => {
                self.expr(value);
                self.json_path(path);
            }
            Expr::IsFalse(e)
            | Expr::IsNotFalse(e)
            | Expr::IsTrue(e)
            | Expr::IsNotTrue(e)
            | Expr::IsNull(e)
            | Expr::IsNotNull(e)
            | Expr::IsUnknown(e)
            | Expr::IsNotUnknown(e)
            | Expr::IsJson { expr: e, .. }
            | Expr::IsNormalized { expr: e, .. }
            | Expr::UnaryOp { expr: e, op: _ }
            | Expr::Cast { expr: e, .. }
            | Expr::Extract { expr: e, .. }
            | Expr::Collate { expr: e, .. }
            | Expr::Nested(e)
            | Expr::Prefixed { value: e, .. }
            | Expr::Named { expr: e, .. }
            | Expr::OuterJoin(e)
            | Expr::Prior(e) => self.expr(e),
            Expr::IsDistinctFrom(a, b)
            | Expr::IsNotDistinctFrom(a, b)
            | Expr::BinaryOp {
                left: a,
                op: _,
                right: b,
            }
            | Expr::AnyOp {
                left: a, right: b, ..
            }
            | Expr::AllOp {
                left: a, right: b, ..
            }
            | Expr::AtTimeZone {
                timestamp: a,
                time_zone: b,
            }
            | Expr::Position { expr: a, r#in: b }
            | Expr::RLike {
                expr: a,
                pattern: b,
                ..
            }
            | Expr::MemberOf(MemberOf { value: a, array: b }) => {
                self.expr(a);
                self.expr(b);
            }
            Expr::Between {
                expr,
                negated: _,
                low,
                high,
            } => self.exprs([expr.as_ref(), low, high]),
            Expr::Like {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::SimilarTo {
                expr,
                pattern,
                escape_char,
                ..
            } => {
                self.exprs([expr.as_ref(), pattern]);
                self.exprs(escape_char.as_deref());
            }
            Expr::Convert { expr, styles, .. } => {
                self.expr(expr);
                self.exprs(styles);
            }
            Expr::Ceil { expr, field } | Expr::Floor { expr, field } => {
                self.expr(expr);
                match field {
                    CeilFloorKind::DateTimeField(_) | CeilFloorKind::Scale(_) => {}
                }
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                self.expr(expr);
                self.exprs(
                    substring_from
                        .as_deref()
                        .into_iter()
                        .chain(substring_for.as_deref()),
                );
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                trim_where: _,
            } => {
                self.expr(expr);
                self.exprs(trim_what.as_deref());
                self.exprs(trim_characters.iter().flatten());
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                self.exprs([expr.as_ref(), overlay_what, overlay_from]);
                self.exprs(overlay_for.as_deref());
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                self.exprs(operand.as_deref().into_iter().chain(else_result.as_deref()));
                for when in conditions {
                    self.expr(&when.condition);
                    self.expr(&when.result);
                }
            }
            Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                self.exprs(sets.iter().flatten());
            }
            Expr::Tuple(exprs) | Expr::Struct { values: exprs, .. } => self.exprs(exprs),
            Expr::Array(array) => self.exprs(&array.elem),
            Expr::Interval(interval) => self.expr(&interval.value),
            Expr::Dictionary(fields) => self.exprs(fields.iter().map(|f| f.value.as_ref())),
            Expr::Map(map) => {
                for entry in &map.entries {
                    self.exprs([entry.key.as_ref(), entry.value.as_ref()]);
                }
            }
            Expr::Lambda(lambda) => self.expr(&lambda.body),
        }
        Ok(())
    }
}

/// PostgreSQL's functional notation: `x.f` and `(expr).f` call `f(x)` when `f` is not a column or
/// field of `x`, on any argument type (`SELECT (42::bigint).pg_advisory_lock` takes the lock).
/// So every name after a `.` in a column reference or field access is refused like a called
/// name; a column that happens to share a denied name can be selected unqualified.
pub(super) fn field_notation_call(expr: &Expr) -> Result<(), GuardError> {
    let refuse = |name: &str| {
        let lower = name.to_lowercase();
        match denied_function(&lower) {
            Some(_) => Err(GuardError::ForbiddenFunction(excerpt(&lower).into_owned())),
            None => Ok(()),
        }
    };
    match expr {
        Expr::CompoundIdentifier(parts) => parts.iter().skip(1).try_for_each(|p| refuse(&p.value)),
        Expr::CompoundFieldAccess {
            root: _,
            access_chain,
        } => access_chain.iter().try_for_each(|access| match access {
            AccessExpr::Dot(Expr::Identifier(ident)) => refuse(&ident.value),
            AccessExpr::Dot(Expr::CompoundIdentifier(parts)) => {
                parts.iter().try_for_each(|p| refuse(&p.value))
            }
            AccessExpr::Dot(_) | AccessExpr::Subscript(_) => Ok(()),
        }),
        _ => Ok(()),
    }
}
