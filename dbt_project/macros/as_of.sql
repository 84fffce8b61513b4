{#- The run's as-of timestamp (UTC): var('as_of') when given, else the environment's GLMM_AB_AS_OF
    (how the nightly flow passes it: a --vars value that changes every night would make dbt parse
    the whole project again each time), else the current time. -#}
{% macro as_of() -%}
    {%- set value = var('as_of', none) or env_var('GLMM_AB_AS_OF', '') -%}
    {%- if value -%}
        cast('{{ value }}' as {{ dbt.type_timestamp() }})
    {%- else -%}
        {{ utc_now() }}
    {%- endif -%}
{%- endmacro %}

{#- Now as a plain UTC timestamp, comparable with the models' UTC timestamps without
    passing through the session's time zone. -#}
{% macro utc_now() -%}
    {{ return(adapter.dispatch('utc_now', 'glmm_ab')()) }}
{%- endmacro %}

{% macro default__utc_now() -%}
    {{ dbt.current_timestamp() }}
{%- endmacro %}

{% macro duckdb__utc_now() -%}
    (current_timestamp at time zone 'UTC')
{%- endmacro %}
