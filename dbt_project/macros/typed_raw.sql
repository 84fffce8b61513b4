{#- A raw timestamp column as a UTC TIMESTAMP, whatever its warehouse type.
    A zoned column (TIMESTAMP WITH TIME ZONE) holds instants: it is converted to
    UTC explicitly, never through the session's or the machine's time zone. A plain
    TIMESTAMP is taken to be UTC already (the raw contract says so). Text columns
    never get here: the raw-contract check refuses them before dbt runs. -#}
{% macro utc_timestamp(relation, column) -%}
    {{ return(adapter.dispatch('utc_timestamp', 'glmm_ab')(relation, column)) }}
{%- endmacro %}

{% macro default__utc_timestamp(relation, column) -%}
    cast({{ column }} as {{ dbt.type_timestamp() }})
{%- endmacro %}

{% macro duckdb__utc_timestamp(relation, column) -%}
    {%- set found = namespace(zoned=false) -%}
    {%- if execute -%}
        {%- for c in adapter.get_columns_in_relation(relation) -%}
            {%- if c.name | lower == column | lower and 'TIME ZONE' in (c.dtype | upper) -%}
                {%- set found.zoned = true -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if found.zoned -%}
        ({{ column }} at time zone 'UTC')
    {%- else -%}
        cast({{ column }} as {{ dbt.type_timestamp() }})
    {%- endif -%}
{%- endmacro %}

{#- The select list of raw.<table> as the models read it: every id and name as
    text (numeric ids work), every time as a UTC timestamp (utc_timestamp). One
    place knows the raw contract's columns, so staging, the data-quality mart and
    the health report type them alike. -#}
{% macro typed_raw_columns(relation, table) -%}
    {%- set contract = {
        'experiments': [('experiment_id', 'text'), ('control_variant', 'text'), ('start_at', 'time'), ('end_at', 'time')],
        'metrics': [('metric_id', 'text'), ('event_name', 'text')],
        'assignments': [('experiment_id', 'text'), ('user_id', 'text'), ('variant', 'text'), ('assigned_at', 'time')],
        'events': [('event_id', 'text'), ('user_id', 'text'), ('event_name', 'text'), ('event_at', 'time')],
    } -%}
    {%- for name, kind in contract[table] %}
        {% if kind == 'time' -%}
            {{ utc_timestamp(relation, name) }}
        {%- else -%}
            cast({{ name }} as {{ dbt.type_string() }})
        {%- endif %} as {{ name }}{{ "," if not loop.last }}
    {%- endfor %}
{%- endmacro %}

{#- An optional raw column as the models read it: the column, typed (text trimmed and lower-cased
    when `lower`), or `default` when the warehouse's table does not have it (a raw table written
    before the column existed keeps working). -#}
{% macro optional_raw_column(relation, column, kind, default) -%}
    {%- set found = namespace(present=false) -%}
    {%- if execute -%}
        {%- for c in adapter.get_columns_in_relation(relation) -%}
            {%- if c.name | lower == column | lower -%}{%- set found.present = true -%}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if not found.present -%}
        {{ default }}
    {%- elif kind == 'lower' -%}
        coalesce(lower(trim(cast({{ column }} as {{ dbt.type_string() }}))), {{ default }})
    {%- elif kind == 'double' -%}
        cast({{ column }} as {{ type_double() }})
    {%- else -%}
        cast({{ column }} as {{ dbt.type_string() }})
    {%- endif -%}
{%- endmacro %}

{#- An optional raw table's relation when the warehouse has it, else none (and none while parsing):
    its staging model then selects no rows of the same columns. -#}
{% macro optional_raw_relation(table) -%}
    {%- set declared = source('raw', table) -%}
    {{ return(adapter.get_relation(database=declared.database, schema=declared.schema,
                                   identifier=declared.identifier) if execute else none) }}
{%- endmacro %}
